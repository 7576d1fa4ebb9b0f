//! The exact path for up to [`EXACT_NODE_LIMIT`](super::EXACT_NODE_LIMIT) usable nodes: a DP
//! over all node subsets finds the most disjoint pipelines (least memory on ties), so whenever
//! `r` disjoint pipelines exist, at least `r` are formed.

use super::fit::Caps;

/// Orders `members` (indices in internal order) into pipeline stages if they
/// can cover `[0, L)` together: a full node alone, or driver, workers,
/// validator. Drivers and validators are the members losing the fewest layers
/// to the embedding and head, which maximizes what the group covers.
fn stage_order(caps: &[Caps], members: &[usize], l: u32) -> Option<Vec<usize>> {
    if let Some(&node) = members.iter().find(|&&m| caps[m].full) {
        return Some(vec![node]);
    }
    if l < 2 || members.len() < 2 {
        return None;
    }
    let drivers = two_cheapest(
        members
            .iter()
            .filter(|&&m| caps[m].driver > 0)
            .map(|&m| (caps[m].worker - caps[m].driver, m)),
    );
    let validators = two_cheapest(
        members
            .iter()
            .filter(|&&m| caps[m].validator > 0)
            .map(|&m| (caps[m].worker - caps[m].validator, m)),
    );
    let (driver, validator) = match (drivers, validators) {
        ([Some(d), _], [Some(v), _]) if d.1 != v.1 => (d, v),
        ([Some(d1), d2], [Some(v1), v2]) => {
            let with_second_validator = v2.map(|v| (d1, v));
            let with_second_driver = d2.map(|d| (d, v1));
            match (with_second_validator, with_second_driver) {
                (Some(a), Some(b)) if b.0.0 + b.1.0 < a.0.0 + a.1.0 => b,
                (Some(a), _) => a,
                (None, Some(b)) => b,
                (None, None) => return None,
            }
        }
        _ => return None,
    };
    let total: u64 = members.iter().map(|&m| u64::from(caps[m].worker)).sum();
    let covered = total - u64::from(driver.0) - u64::from(validator.0);
    if covered < u64::from(l) {
        return None;
    }
    let mut stages = Vec::with_capacity(members.len());
    stages.push(driver.1);
    stages.extend(
        members
            .iter()
            .copied()
            .filter(|&m| m != driver.1 && m != validator.1),
    );
    stages.push(validator.1);
    Some(stages)
}

/// The two smallest `(penalty, node)` pairs; earlier nodes win ties.
fn two_cheapest(items: impl Iterator<Item = (u32, usize)>) -> [Option<(u32, usize)>; 2] {
    let mut best: [Option<(u32, usize)>; 2] = [None, None];
    for item in items {
        match best {
            [None, _] => best[0] = Some(item),
            [Some(first), _] if item.0 < first.0 => best = [Some(item), Some(first)],
            [Some(_), None] => best[1] = Some(item),
            [Some(_), Some(second)] if item.0 < second.0 => best[1] = Some(item),
            _ => {}
        }
    }
    best
}

/// Exact maximum number of disjoint pipelines via DP over node subsets.
///
/// `count[mask]` is the most pipelines formable from the nodes in `mask`
/// (`used[mask]` the least memory they take among such choices). Either the
/// mask's lowest node is unused, or it belongs to a minimal covering subset;
/// restricting to minimal subsets loses nothing (any cover shrinks to one) and
/// keeps redundant nodes free for partial spans.
pub(super) fn pipeline_groups(caps: &[Caps], usable: &[usize], l: u32) -> Vec<Vec<usize>> {
    let n = usable.len();
    let size = 1usize << n;
    let members_of = |mask: usize| -> Vec<usize> {
        (0..n)
            .filter(|bit| (mask >> bit) & 1 == 1)
            .map(|bit| usable[bit])
            .collect()
    };

    let mut covers = vec![false; size];
    let mut cost = vec![0u64; size];
    for mask in 1..size {
        let low = mask.trailing_zeros() as usize;
        cost[mask] = cost[mask & (mask - 1)] + u64::from(caps[usable[low]].cost);
        covers[mask] = stage_order(caps, &members_of(mask), l).is_some();
    }
    let minimal: Vec<bool> = (0..size)
        .map(|mask| {
            covers[mask] && (0..n).all(|bit| (mask >> bit) & 1 == 0 || !covers[mask ^ (1 << bit)])
        })
        .collect();

    let mut count = vec![0u32; size];
    let mut used = vec![0u64; size];
    let mut choice = vec![0usize; size];
    for mask in 1..size {
        let low = mask & mask.wrapping_neg();
        let rest = mask ^ low;
        let (mut best_count, mut best_used, mut best_choice) = (count[rest], used[rest], 0);
        let mut sub = rest;
        loop {
            let group = sub | low;
            if minimal[group] {
                let other = mask ^ group;
                let c = count[other] + 1;
                let u = used[other] + cost[group];
                if c > best_count || (c == best_count && u < best_used) {
                    (best_count, best_used, best_choice) = (c, u, group);
                }
            }
            if sub == 0 {
                break;
            }
            sub = (sub - 1) & rest;
        }
        count[mask] = best_count;
        used[mask] = best_used;
        choice[mask] = best_choice;
    }

    let mut groups = Vec::new();
    let mut mask = size - 1;
    while mask != 0 {
        let group = choice[mask];
        if group == 0 {
            mask &= mask - 1;
            continue;
        }
        if let Some(stages) = stage_order(caps, &members_of(group), l) {
            groups.push(stages);
        }
        mask ^= group;
    }
    groups
}

#[cfg(test)]
mod tests {
    use crate::placement::place;
    use crate::placement::testing::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn exact_path_is_sound_and_meets_replicas((l, c, memories, r) in instance()) {
            let nodes = nodes_from(&memories);
            let a = place(l, &c, &nodes, r).unwrap();
            check_invariants(l, &c, &nodes, r, &a);
            if memories.len() <= 10 && k_covers_possible(l, &c, &memories, r as usize) {
                prop_assert!(a.health.is_healthy(), "feasible but degraded: {:?}", a);
            }
            if memories.len() <= 8 {
                let more = a.pipelines.len() + 1;
                prop_assert!(!k_covers_possible(l, &c, &memories, more), "{} pipelines possible", more);
            }
        }
    }
}
